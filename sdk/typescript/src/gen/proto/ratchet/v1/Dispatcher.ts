// Original file: proto/ratchet/v1/worker.proto

import type * as grpc from '@grpc/grpc-js'
import type { MethodDefinition } from '@grpc/proto-loader'
import type { DispatcherMessage as _ratchet_v1_DispatcherMessage, DispatcherMessage__Output as _ratchet_v1_DispatcherMessage__Output } from '../../ratchet/v1/DispatcherMessage.js';
import type { WorkerMessage as _ratchet_v1_WorkerMessage, WorkerMessage__Output as _ratchet_v1_WorkerMessage__Output } from '../../ratchet/v1/WorkerMessage.js';

export interface DispatcherClient extends grpc.Client {
  Connect(metadata: grpc.Metadata, options?: grpc.CallOptions): grpc.ClientDuplexStream<_ratchet_v1_WorkerMessage, _ratchet_v1_DispatcherMessage__Output>;
  Connect(options?: grpc.CallOptions): grpc.ClientDuplexStream<_ratchet_v1_WorkerMessage, _ratchet_v1_DispatcherMessage__Output>;
  connect(metadata: grpc.Metadata, options?: grpc.CallOptions): grpc.ClientDuplexStream<_ratchet_v1_WorkerMessage, _ratchet_v1_DispatcherMessage__Output>;
  connect(options?: grpc.CallOptions): grpc.ClientDuplexStream<_ratchet_v1_WorkerMessage, _ratchet_v1_DispatcherMessage__Output>;
  
}

export interface DispatcherHandlers extends grpc.UntypedServiceImplementation {
  Connect: grpc.handleBidiStreamingCall<_ratchet_v1_WorkerMessage__Output, _ratchet_v1_DispatcherMessage>;
  
}

export interface DispatcherDefinition extends grpc.ServiceDefinition {
  Connect: MethodDefinition<_ratchet_v1_WorkerMessage, _ratchet_v1_DispatcherMessage, _ratchet_v1_WorkerMessage__Output, _ratchet_v1_DispatcherMessage__Output>
}
