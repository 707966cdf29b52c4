// Original file: proto/ratchet/v1/worker.proto

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
}
