// Original file: proto/ratchet/v1/worker.proto

import type { Register as _ratchet_v1_Register, Register__Output as _ratchet_v1_Register__Output } from '../../ratchet/v1/Register.js';
import type { Heartbeat as _ratchet_v1_Heartbeat, Heartbeat__Output as _ratchet_v1_Heartbeat__Output } from '../../ratchet/v1/Heartbeat.js';
import type { TaskEvents as _ratchet_v1_TaskEvents, TaskEvents__Output as _ratchet_v1_TaskEvents__Output } from '../../ratchet/v1/TaskEvents.js';

export interface WorkerMessage {
  'register'?: (_ratchet_v1_Register | null);
  'heartbeat'?: (_ratchet_v1_Heartbeat | null);
  'events'?: (_ratchet_v1_TaskEvents | null);
  'msg'?: "register"|"heartbeat"|"events";
}

export interface WorkerMessage__Output {
  'register'?: (_ratchet_v1_Register__Output | null);
  'heartbeat'?: (_ratchet_v1_Heartbeat__Output | null);
  'events'?: (_ratchet_v1_TaskEvents__Output | null);
  'msg'?: "register"|"heartbeat"|"events";
}
