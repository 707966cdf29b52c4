// Original file: proto/ratchet/v1/worker.proto

import type { EventKind as _ratchet_v1_EventKind, EventKind__Output as _ratchet_v1_EventKind__Output } from '../../ratchet/v1/EventKind.js';
import type { TaskError as _ratchet_v1_TaskError, TaskError__Output as _ratchet_v1_TaskError__Output } from '../../ratchet/v1/TaskError.js';
import type { Long } from '@grpc/proto-loader';

export interface TaskEvent {
  'taskId'?: (string);
  'attempt'?: (number);
  'kind'?: (_ratchet_v1_EventKind);
  'output'?: (Buffer | Uint8Array | string);
  'error'?: (_ratchet_v1_TaskError | null);
  'log'?: (string);
  'chunk'?: (Buffer | Uint8Array | string);
  'refreshMs'?: (number | string | Long);
  'tsMs'?: (number | string | Long);
  'level'?: (string);
  'seq'?: (number | string | Long);
  'chunkType'?: (string);
}

export interface TaskEvent__Output {
  'taskId': (string);
  'attempt': (number);
  'kind': (_ratchet_v1_EventKind__Output);
  'output': (Buffer);
  'error': (_ratchet_v1_TaskError__Output | null);
  'log': (string);
  'chunk': (Buffer);
  'refreshMs': (number);
  'tsMs': (number);
  'level': (string);
  'seq': (number);
  'chunkType': (string);
}
