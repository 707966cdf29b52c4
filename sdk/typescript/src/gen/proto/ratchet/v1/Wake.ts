// Original file: proto/ratchet/v1/worker.proto


export interface Wake {
  'taskId'?: (string);
  'attempt'?: (number);
  'position'?: (number);
  'result'?: (Buffer | Uint8Array | string);
}

export interface Wake__Output {
  'taskId': (string);
  'attempt': (number);
  'position': (number);
  'result': (Buffer);
}
