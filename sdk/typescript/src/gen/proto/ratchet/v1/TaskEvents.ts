// Original file: proto/ratchet/v1/worker.proto

import type { TaskEvent as _ratchet_v1_TaskEvent, TaskEvent__Output as _ratchet_v1_TaskEvent__Output } from '../../ratchet/v1/TaskEvent.js';

export interface TaskEvents {
  'events'?: (_ratchet_v1_TaskEvent)[];
}

export interface TaskEvents__Output {
  'events': (_ratchet_v1_TaskEvent__Output)[];
}
