// Original file: proto/ratchet/v1/worker.proto

import type { Registered as _ratchet_v1_Registered, Registered__Output as _ratchet_v1_Registered__Output } from '../../ratchet/v1/Registered.js';
import type { Assignments as _ratchet_v1_Assignments, Assignments__Output as _ratchet_v1_Assignments__Output } from '../../ratchet/v1/Assignments.js';
import type { Cancels as _ratchet_v1_Cancels, Cancels__Output as _ratchet_v1_Cancels__Output } from '../../ratchet/v1/Cancels.js';
import type { Wakes as _ratchet_v1_Wakes, Wakes__Output as _ratchet_v1_Wakes__Output } from '../../ratchet/v1/Wakes.js';

export interface DispatcherMessage {
  'registered'?: (_ratchet_v1_Registered | null);
  'assignments'?: (_ratchet_v1_Assignments | null);
  'cancels'?: (_ratchet_v1_Cancels | null);
  'wakes'?: (_ratchet_v1_Wakes | null);
  'msg'?: "registered"|"assignments"|"cancels"|"wakes";
}

export interface DispatcherMessage__Output {
  'registered'?: (_ratchet_v1_Registered__Output | null);
  'assignments'?: (_ratchet_v1_Assignments__Output | null);
  'cancels'?: (_ratchet_v1_Cancels__Output | null);
  'wakes'?: (_ratchet_v1_Wakes__Output | null);
  'msg'?: "registered"|"assignments"|"cancels"|"wakes";
}
