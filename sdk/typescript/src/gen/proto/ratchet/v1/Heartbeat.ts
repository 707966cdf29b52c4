// Original file: proto/ratchet/v1/worker.proto

import type { Long } from '@grpc/proto-loader';

export interface Heartbeat {
  'tsMs'?: (number | string | Long);
}

export interface Heartbeat__Output {
  'tsMs': (number);
}
