// Original file: proto/ratchet/v1/worker.proto


export interface DurableStep {
  'position'?: (number);
  'kind'?: (string);
  'spec'?: (Buffer | Uint8Array | string);
  'result'?: (Buffer | Uint8Array | string);
  'done'?: (boolean);
}

export interface DurableStep__Output {
  'position': (number);
  'kind': (string);
  'spec': (Buffer);
  'result': (Buffer);
  'done': (boolean);
}
