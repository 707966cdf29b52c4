// Original file: proto/ratchet/v1/worker.proto

import type { DurableStep as _ratchet_v1_DurableStep, DurableStep__Output as _ratchet_v1_DurableStep__Output } from '../../ratchet/v1/DurableStep.js';
import type { Long } from '@grpc/proto-loader';

export interface Assignment {
  'taskId'?: (string);
  'runId'?: (string);
  'attempt'?: (number);
  'workflow'?: (string);
  'taskName'?: (string);
  'action'?: (string);
  'input'?: (Buffer | Uint8Array | string);
  'parentOutputs'?: ({[key: string]: Buffer | Uint8Array | string});
  'additional'?: ({[key: string]: Buffer | Uint8Array | string});
  'timeoutMs'?: (number | string | Long);
  'metadata'?: ({[key: string]: string});
  'traceparent'?: (string);
  'durableLog'?: (_ratchet_v1_DurableStep)[];
}

export interface Assignment__Output {
  'taskId': (string);
  'runId': (string);
  'attempt': (number);
  'workflow': (string);
  'taskName': (string);
  'action': (string);
  'input': (Buffer);
  'parentOutputs': ({[key: string]: Buffer});
  'additional': ({[key: string]: Buffer});
  'timeoutMs': (number);
  'metadata': ({[key: string]: string});
  'traceparent': (string);
  'durableLog': (_ratchet_v1_DurableStep__Output)[];
}
