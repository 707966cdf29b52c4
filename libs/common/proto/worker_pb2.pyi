from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    STARTED: _ClassVar[EventKind]
    COMPLETED: _ClassVar[EventKind]
    FAILED: _ClassVar[EventKind]
    LOG: _ClassVar[EventKind]
    STREAM: _ClassVar[EventKind]
    REFRESH_TIMEOUT: _ClassVar[EventKind]
    CANCELLED: _ClassVar[EventKind]
EVENT_KIND_UNSPECIFIED: EventKind
STARTED: EventKind
COMPLETED: EventKind
FAILED: EventKind
LOG: EventKind
STREAM: EventKind
REFRESH_TIMEOUT: EventKind
CANCELLED: EventKind

class WorkerMessage(_message.Message):
    __slots__ = ("register", "heartbeat", "events")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    register: Register
    heartbeat: Heartbeat
    events: TaskEvents
    def __init__(self, register: _Optional[_Union[Register, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., events: _Optional[_Union[TaskEvents, _Mapping]] = ...) -> None: ...

class Register(_message.Message):
    __slots__ = ("name", "actions", "slots", "labels", "worker_id", "holding")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    HOLDING_FIELD_NUMBER: _ClassVar[int]
    name: str
    actions: _containers.RepeatedScalarFieldContainer[str]
    slots: int
    labels: _containers.ScalarMap[str, str]
    worker_id: str
    holding: _containers.RepeatedCompositeFieldContainer[TaskKey]
    def __init__(self, name: _Optional[str] = ..., actions: _Optional[_Iterable[str]] = ..., slots: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., worker_id: _Optional[str] = ..., holding: _Optional[_Iterable[_Union[TaskKey, _Mapping]]] = ...) -> None: ...

class TaskKey(_message.Message):
    __slots__ = ("task_id", "attempt")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("ts_ms",)
    TS_MS_FIELD_NUMBER: _ClassVar[int]
    ts_ms: int
    def __init__(self, ts_ms: _Optional[int] = ...) -> None: ...

class TaskError(_message.Message):
    __slots__ = ("type", "message", "traceback", "non_retryable")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    NON_RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    type: str
    message: str
    traceback: str
    non_retryable: bool
    def __init__(self, type: _Optional[str] = ..., message: _Optional[str] = ..., traceback: _Optional[str] = ..., non_retryable: _Optional[bool] = ...) -> None: ...

class TaskEvent(_message.Message):
    __slots__ = ("task_id", "attempt", "kind", "output", "error", "log", "chunk", "refresh_ms", "ts_ms", "level", "seq", "chunk_type")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    REFRESH_MS_FIELD_NUMBER: _ClassVar[int]
    TS_MS_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CHUNK_TYPE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    kind: EventKind
    output: bytes
    error: TaskError
    log: str
    chunk: bytes
    refresh_ms: int
    ts_ms: int
    level: str
    seq: int
    chunk_type: str
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., kind: _Optional[_Union[EventKind, str]] = ..., output: _Optional[bytes] = ..., error: _Optional[_Union[TaskError, _Mapping]] = ..., log: _Optional[str] = ..., chunk: _Optional[bytes] = ..., refresh_ms: _Optional[int] = ..., ts_ms: _Optional[int] = ..., level: _Optional[str] = ..., seq: _Optional[int] = ..., chunk_type: _Optional[str] = ...) -> None: ...

class TaskEvents(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[TaskEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[TaskEvent, _Mapping]]] = ...) -> None: ...

class DispatcherMessage(_message.Message):
    __slots__ = ("registered", "assignments", "cancels")
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    CANCELS_FIELD_NUMBER: _ClassVar[int]
    registered: Registered
    assignments: Assignments
    cancels: Cancels
    def __init__(self, registered: _Optional[_Union[Registered, _Mapping]] = ..., assignments: _Optional[_Union[Assignments, _Mapping]] = ..., cancels: _Optional[_Union[Cancels, _Mapping]] = ...) -> None: ...

class Registered(_message.Message):
    __slots__ = ("worker_id", "tenant", "dispatcher_id", "heartbeat_interval_ms")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    DISPATCHER_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    tenant: str
    dispatcher_id: str
    heartbeat_interval_ms: int
    def __init__(self, worker_id: _Optional[str] = ..., tenant: _Optional[str] = ..., dispatcher_id: _Optional[str] = ..., heartbeat_interval_ms: _Optional[int] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("task_id", "run_id", "attempt", "workflow", "task_name", "action", "input", "parent_outputs", "additional", "timeout_ms", "metadata", "traceparent")
    class ParentOutputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    class AdditionalEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    TASK_NAME_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    PARENT_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    ADDITIONAL_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    run_id: str
    attempt: int
    workflow: str
    task_name: str
    action: str
    input: bytes
    parent_outputs: _containers.ScalarMap[str, bytes]
    additional: _containers.ScalarMap[str, bytes]
    timeout_ms: int
    metadata: _containers.ScalarMap[str, str]
    traceparent: str
    def __init__(self, task_id: _Optional[str] = ..., run_id: _Optional[str] = ..., attempt: _Optional[int] = ..., workflow: _Optional[str] = ..., task_name: _Optional[str] = ..., action: _Optional[str] = ..., input: _Optional[bytes] = ..., parent_outputs: _Optional[_Mapping[str, bytes]] = ..., additional: _Optional[_Mapping[str, bytes]] = ..., timeout_ms: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ..., traceparent: _Optional[str] = ...) -> None: ...

class Assignments(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Assignment]
    def __init__(self, items: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ...) -> None: ...

class Cancel(_message.Message):
    __slots__ = ("task_id", "attempt", "reason")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    reason: str
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class Cancels(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Cancel]
    def __init__(self, items: _Optional[_Iterable[_Union[Cancel, _Mapping]]] = ...) -> None: ...
