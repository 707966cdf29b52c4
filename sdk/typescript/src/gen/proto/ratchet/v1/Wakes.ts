// Original file: proto/ratchet/v1/worker.proto

import type { Wake as _ratchet_v1_Wake, Wake__Output as _ratchet_v1_Wake__Output } from '../../ratchet/v1/Wake.js';

export interface Wakes {
  'items'?: (_ratchet_v1_Wake)[];
}

export interface Wakes__Output {
  'items': (_ratchet_v1_Wake__Output)[];
}
