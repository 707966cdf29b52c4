// Original file: proto/ratchet/v1/worker.proto


export interface TaskError {
  'type'?: (string);
  'message'?: (string);
  'traceback'?: (string);
  'nonRetryable'?: (boolean);
}

export interface TaskError__Output {
  'type': (string);
  'message': (string);
  'traceback': (string);
  'nonRetryable': (boolean);
}
