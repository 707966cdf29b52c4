import type * as grpc from '@grpc/grpc-js';
import type { EnumTypeDefinition, MessageTypeDefinition } from '@grpc/proto-loader';

import type { Assignment as _ratchet_v1_Assignment, Assignment__Output as _ratchet_v1_Assignment__Output } from './ratchet/v1/Assignment.js';
import type { Assignments as _ratchet_v1_Assignments, Assignments__Output as _ratchet_v1_Assignments__Output } from './ratchet/v1/Assignments.js';
import type { Cancel as _ratchet_v1_Cancel, Cancel__Output as _ratchet_v1_Cancel__Output } from './ratchet/v1/Cancel.js';
import type { Cancels as _ratchet_v1_Cancels, Cancels__Output as _ratchet_v1_Cancels__Output } from './ratchet/v1/Cancels.js';
import type { DispatcherClient as _ratchet_v1_DispatcherClient, DispatcherDefinition as _ratchet_v1_DispatcherDefinition } from './ratchet/v1/Dispatcher.js';
import type { DispatcherMessage as _ratchet_v1_DispatcherMessage, DispatcherMessage__Output as _ratchet_v1_DispatcherMessage__Output } from './ratchet/v1/DispatcherMessage.js';
import type { DurableStep as _ratchet_v1_DurableStep, DurableStep__Output as _ratchet_v1_DurableStep__Output } from './ratchet/v1/DurableStep.js';
import type { Heartbeat as _ratchet_v1_Heartbeat, Heartbeat__Output as _ratchet_v1_Heartbeat__Output } from './ratchet/v1/Heartbeat.js';
import type { Register as _ratchet_v1_Register, Register__Output as _ratchet_v1_Register__Output } from './ratchet/v1/Register.js';
import type { Registered as _ratchet_v1_Registered, Registered__Output as _ratchet_v1_Registered__Output } from './ratchet/v1/Registered.js';
import type { TaskError as _ratchet_v1_TaskError, TaskError__Output as _ratchet_v1_TaskError__Output } from './ratchet/v1/TaskError.js';
import type { TaskEvent as _ratchet_v1_TaskEvent, TaskEvent__Output as _ratchet_v1_TaskEvent__Output } from './ratchet/v1/TaskEvent.js';
import type { TaskEvents as _ratchet_v1_TaskEvents, TaskEvents__Output as _ratchet_v1_TaskEvents__Output } from './ratchet/v1/TaskEvents.js';
import type { TaskKey as _ratchet_v1_TaskKey, TaskKey__Output as _ratchet_v1_TaskKey__Output } from './ratchet/v1/TaskKey.js';
import type { Wake as _ratchet_v1_Wake, Wake__Output as _ratchet_v1_Wake__Output } from './ratchet/v1/Wake.js';
import type { Wakes as _ratchet_v1_Wakes, Wakes__Output as _ratchet_v1_Wakes__Output } from './ratchet/v1/Wakes.js';
import type { WorkerMessage as _ratchet_v1_WorkerMessage, WorkerMessage__Output as _ratchet_v1_WorkerMessage__Output } from './ratchet/v1/WorkerMessage.js';

type SubtypeConstructor<Constructor extends new (...args: any) => any, Subtype> = {
  new(...args: ConstructorParameters<Constructor>): Subtype;
};

export interface ProtoGrpcType {
  ratchet: {
    v1: {
      Assignment: MessageTypeDefinition<_ratchet_v1_Assignment, _ratchet_v1_Assignment__Output>
      Assignments: MessageTypeDefinition<_ratchet_v1_Assignments, _ratchet_v1_Assignments__Output>
      Cancel: MessageTypeDefinition<_ratchet_v1_Cancel, _ratchet_v1_Cancel__Output>
      Cancels: MessageTypeDefinition<_ratchet_v1_Cancels, _ratchet_v1_Cancels__Output>
      Dispatcher: SubtypeConstructor<typeof grpc.Client, _ratchet_v1_DispatcherClient> & { service: _ratchet_v1_DispatcherDefinition }
      DispatcherMessage: MessageTypeDefinition<_ratchet_v1_DispatcherMessage, _ratchet_v1_DispatcherMessage__Output>
      DurableStep: MessageTypeDefinition<_ratchet_v1_DurableStep, _ratchet_v1_DurableStep__Output>
      EventKind: EnumTypeDefinition
      Heartbeat: MessageTypeDefinition<_ratchet_v1_Heartbeat, _ratchet_v1_Heartbeat__Output>
      Register: MessageTypeDefinition<_ratchet_v1_Register, _ratchet_v1_Register__Output>
      Registered: MessageTypeDefinition<_ratchet_v1_Registered, _ratchet_v1_Registered__Output>
      TaskError: MessageTypeDefinition<_ratchet_v1_TaskError, _ratchet_v1_TaskError__Output>
      TaskEvent: MessageTypeDefinition<_ratchet_v1_TaskEvent, _ratchet_v1_TaskEvent__Output>
      TaskEvents: MessageTypeDefinition<_ratchet_v1_TaskEvents, _ratchet_v1_TaskEvents__Output>
      TaskKey: MessageTypeDefinition<_ratchet_v1_TaskKey, _ratchet_v1_TaskKey__Output>
      Wake: MessageTypeDefinition<_ratchet_v1_Wake, _ratchet_v1_Wake__Output>
      Wakes: MessageTypeDefinition<_ratchet_v1_Wakes, _ratchet_v1_Wakes__Output>
      WorkerMessage: MessageTypeDefinition<_ratchet_v1_WorkerMessage, _ratchet_v1_WorkerMessage__Output>
    }
  }
}

