// Original file: proto/ratchet/v1/worker.proto

import type { Cancel as _ratchet_v1_Cancel, Cancel__Output as _ratchet_v1_Cancel__Output } from '../../ratchet/v1/Cancel.js';

export interface Cancels {
  'items'?: (_ratchet_v1_Cancel)[];
}

export interface Cancels__Output {
  'items': (_ratchet_v1_Cancel__Output)[];
}
