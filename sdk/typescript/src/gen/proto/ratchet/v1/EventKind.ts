// Original file: proto/ratchet/v1/worker.proto

export const EventKind = {
  EVENT_KIND_UNSPECIFIED: 'EVENT_KIND_UNSPECIFIED',
  STARTED: 'STARTED',
  COMPLETED: 'COMPLETED',
  FAILED: 'FAILED',
  LOG: 'LOG',
  STREAM: 'STREAM',
  REFRESH_TIMEOUT: 'REFRESH_TIMEOUT',
  CANCELLED: 'CANCELLED',
  WAIT: 'WAIT',
} as const;

export type EventKind =
  | 'EVENT_KIND_UNSPECIFIED'
  | 0
  | 'STARTED'
  | 1
  | 'COMPLETED'
  | 2
  | 'FAILED'
  | 3
  | 'LOG'
  | 4
  | 'STREAM'
  | 5
  | 'REFRESH_TIMEOUT'
  | 6
  | 'CANCELLED'
  | 7
  | 'WAIT'
  | 8

export type EventKind__Output = typeof EventKind[keyof typeof EventKind]
