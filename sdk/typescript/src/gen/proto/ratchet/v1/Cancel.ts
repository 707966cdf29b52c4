// Original file: proto/ratchet/v1/worker.proto


export interface Cancel {
  'taskId'?: (string);
  'attempt'?: (number);
  'reason'?: (string);
}

export interface Cancel__Output {
  'taskId': (string);
  'attempt': (number);
  'reason': (string);
}
