// Original file: proto/ratchet/v1/worker.proto


export interface Registered {
  'workerId'?: (string);
  'tenant'?: (string);
  'dispatcherId'?: (string);
  'heartbeatIntervalMs'?: (number);
}

export interface Registered__Output {
  'workerId': (string);
  'tenant': (string);
  'dispatcherId': (string);
  'heartbeatIntervalMs': (number);
}
