// Original file: proto/ratchet/v1/worker.proto


export interface TaskKey {
  'taskId'?: (string);
  'attempt'?: (number);
}

export interface TaskKey__Output {
  'taskId': (string);
  'attempt': (number);
}
