// Original file: proto/ratchet/v1/worker.proto

import type { TaskKey as _ratchet_v1_TaskKey, TaskKey__Output as _ratchet_v1_TaskKey__Output } from '../../ratchet/v1/TaskKey.js';

export interface Register {
  'name'?: (string);
  'actions'?: (string)[];
  'slots'?: (number);
  'labels'?: ({[key: string]: string});
  'workerId'?: (string);
  'holding'?: (_ratchet_v1_TaskKey)[];
  'durableSlots'?: (number);
}

export interface Register__Output {
  'name': (string);
  'actions': (string)[];
  'slots': (number);
  'labels': ({[key: string]: string});
  'workerId': (string);
  'holding': (_ratchet_v1_TaskKey__Output)[];
  'durableSlots': (number);
}
