from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ValueType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VALUE_TYPE_UNSPECIFIED: _ClassVar[ValueType]
    INT64: _ClassVar[ValueType]
    DOUBLE: _ClassVar[ValueType]
    STRING: _ClassVar[ValueType]
    BOOL: _ClassVar[ValueType]
    BYTES: _ClassVar[ValueType]
    LIST: _ClassVar[ValueType]
    SET: _ClassVar[ValueType]
    MAP: _ClassVar[ValueType]
    STRUCT: _ClassVar[ValueType]
    JSON: _ClassVar[ValueType]

class FeatureStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEATURE_STATUS_UNSPECIFIED: _ClassVar[FeatureStatus]
    PRESENT: _ClassVar[FeatureStatus]
    MISSING: _ClassVar[FeatureStatus]
    STALE: _ClassVar[FeatureStatus]

class PushTarget(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PUSH_TARGET_UNSPECIFIED: _ClassVar[PushTarget]
    ONLINE: _ClassVar[PushTarget]
    OFFLINE: _ClassVar[PushTarget]
    ONLINE_AND_OFFLINE: _ClassVar[PushTarget]
VALUE_TYPE_UNSPECIFIED: ValueType
INT64: ValueType
DOUBLE: ValueType
STRING: ValueType
BOOL: ValueType
BYTES: ValueType
LIST: ValueType
SET: ValueType
MAP: ValueType
STRUCT: ValueType
JSON: ValueType
FEATURE_STATUS_UNSPECIFIED: FeatureStatus
PRESENT: FeatureStatus
MISSING: FeatureStatus
STALE: FeatureStatus
PUSH_TARGET_UNSPECIFIED: PushTarget
ONLINE: PushTarget
OFFLINE: PushTarget
ONLINE_AND_OFFLINE: PushTarget

class Int64List(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class DoubleList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class StringList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class BoolList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, values: _Optional[_Iterable[bool]] = ...) -> None: ...

class BytesList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, values: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Values(_message.Message):
    __slots__ = ("int64_values", "double_values", "string_values", "bool_values", "bytes_values", "nested_values")
    INT64_VALUES_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUES_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUES_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUES_FIELD_NUMBER: _ClassVar[int]
    BYTES_VALUES_FIELD_NUMBER: _ClassVar[int]
    NESTED_VALUES_FIELD_NUMBER: _ClassVar[int]
    int64_values: Int64List
    double_values: DoubleList
    string_values: StringList
    bool_values: BoolList
    bytes_values: BytesList
    nested_values: ValueList
    def __init__(self, int64_values: _Optional[_Union[Int64List, _Mapping]] = ..., double_values: _Optional[_Union[DoubleList, _Mapping]] = ..., string_values: _Optional[_Union[StringList, _Mapping]] = ..., bool_values: _Optional[_Union[BoolList, _Mapping]] = ..., bytes_values: _Optional[_Union[BytesList, _Mapping]] = ..., nested_values: _Optional[_Union[ValueList, _Mapping]] = ...) -> None: ...

class Value(_message.Message):
    __slots__ = ("int64_value", "double_value", "string_value", "bool_value", "bytes_value", "list_value", "map_value")
    INT64_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    BYTES_VALUE_FIELD_NUMBER: _ClassVar[int]
    LIST_VALUE_FIELD_NUMBER: _ClassVar[int]
    MAP_VALUE_FIELD_NUMBER: _ClassVar[int]
    int64_value: int
    double_value: float
    string_value: str
    bool_value: bool
    bytes_value: bytes
    list_value: ValueList
    map_value: ValueMap
    def __init__(self, int64_value: _Optional[int] = ..., double_value: _Optional[float] = ..., string_value: _Optional[str] = ..., bool_value: _Optional[bool] = ..., bytes_value: _Optional[bytes] = ..., list_value: _Optional[_Union[ValueList, _Mapping]] = ..., map_value: _Optional[_Union[ValueMap, _Mapping]] = ...) -> None: ...

class ValueList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[Value]
    def __init__(self, values: _Optional[_Iterable[_Union[Value, _Mapping]]] = ...) -> None: ...

class ValueMap(_message.Message):
    __slots__ = ("fields",)
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    fields: _containers.MessageMap[str, Value]
    def __init__(self, fields: _Optional[_Mapping[str, Value]] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model", "entities", "request_data", "return_features")
    class EntitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Values
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Values, _Mapping]] = ...) -> None: ...
    class RequestDataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Values
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Values, _Mapping]] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_DATA_FIELD_NUMBER: _ClassVar[int]
    RETURN_FEATURES_FIELD_NUMBER: _ClassVar[int]
    model: str
    entities: _containers.MessageMap[str, Values]
    request_data: _containers.MessageMap[str, Values]
    return_features: bool
    def __init__(self, model: _Optional[str] = ..., entities: _Optional[_Mapping[str, Values]] = ..., request_data: _Optional[_Mapping[str, Values]] = ..., return_features: _Optional[bool] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("model", "model_version", "predictions", "missing_features", "feature_names", "features", "degraded")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    MISSING_FEATURES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    predictions: _containers.RepeatedScalarFieldContainer[float]
    missing_features: _containers.RepeatedScalarFieldContainer[int]
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    features: _containers.RepeatedCompositeFieldContainer[DoubleList]
    degraded: bool
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ..., predictions: _Optional[_Iterable[float]] = ..., missing_features: _Optional[_Iterable[int]] = ..., feature_names: _Optional[_Iterable[str]] = ..., features: _Optional[_Iterable[_Union[DoubleList, _Mapping]]] = ..., degraded: _Optional[bool] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "versions", "aliases", "feature_service", "entities", "request_data")
    class AliasesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    aliases: _containers.ScalarMap[str, str]
    feature_service: str
    entities: _containers.RepeatedCompositeFieldContainer[Input]
    request_data: _containers.RepeatedCompositeFieldContainer[Input]
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ..., aliases: _Optional[_Mapping[str, str]] = ..., feature_service: _Optional[str] = ..., entities: _Optional[_Iterable[_Union[Input, _Mapping]]] = ..., request_data: _Optional[_Iterable[_Union[Input, _Mapping]]] = ...) -> None: ...

class Input(_message.Message):
    __slots__ = ("name", "type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: ValueType
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[ValueType, str]] = ...) -> None: ...

class GetOnlineFeaturesRequest(_message.Message):
    __slots__ = ("feature_service", "features", "entities", "request_data")
    class EntitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Values
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Values, _Mapping]] = ...) -> None: ...
    class RequestDataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Values
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Values, _Mapping]] = ...) -> None: ...
    FEATURE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_DATA_FIELD_NUMBER: _ClassVar[int]
    feature_service: str
    features: _containers.RepeatedScalarFieldContainer[str]
    entities: _containers.MessageMap[str, Values]
    request_data: _containers.MessageMap[str, Values]
    def __init__(self, feature_service: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ..., entities: _Optional[_Mapping[str, Values]] = ..., request_data: _Optional[_Mapping[str, Values]] = ...) -> None: ...

class FeatureColumn(_message.Message):
    __slots__ = ("name", "type", "values", "event_timestamps_us", "statuses", "feast_type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIMESTAMPS_US_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    FEAST_TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: ValueType
    values: Values
    event_timestamps_us: _containers.RepeatedScalarFieldContainer[int]
    statuses: _containers.RepeatedScalarFieldContainer[FeatureStatus]
    feast_type: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[ValueType, str]] = ..., values: _Optional[_Union[Values, _Mapping]] = ..., event_timestamps_us: _Optional[_Iterable[int]] = ..., statuses: _Optional[_Iterable[_Union[FeatureStatus, str]]] = ..., feast_type: _Optional[str] = ...) -> None: ...

class GetOnlineFeaturesResponse(_message.Message):
    __slots__ = ("features",)
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedCompositeFieldContainer[FeatureColumn]
    def __init__(self, features: _Optional[_Iterable[_Union[FeatureColumn, _Mapping]]] = ...) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("push_source", "columns", "to")
    class ColumnsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Values
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Values, _Mapping]] = ...) -> None: ...
    PUSH_SOURCE_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    push_source: str
    columns: _containers.MessageMap[str, Values]
    to: PushTarget
    def __init__(self, push_source: _Optional[str] = ..., columns: _Optional[_Mapping[str, Values]] = ..., to: _Optional[_Union[PushTarget, str]] = ...) -> None: ...

class PushResponse(_message.Message):
    __slots__ = ("rows_written", "rows_older_than_stored")
    ROWS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    ROWS_OLDER_THAN_STORED_FIELD_NUMBER: _ClassVar[int]
    rows_written: int
    rows_older_than_stored: int
    def __init__(self, rows_written: _Optional[int] = ..., rows_older_than_stored: _Optional[int] = ...) -> None: ...
