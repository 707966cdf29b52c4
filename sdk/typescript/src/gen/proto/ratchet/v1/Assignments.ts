// Original file: proto/ratchet/v1/worker.proto

import type { Assignment as _ratchet_v1_Assignment, Assignment__Output as _ratchet_v1_Assignment__Output } from '../../ratchet/v1/Assignment.js';

export interface Assignments {
  'items'?: (_ratchet_v1_Assignment)[];
}

export interface Assignments__Output {
  'items': (_ratchet_v1_Assignment__Output)[];
}
