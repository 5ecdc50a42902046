"""The limit kinds are described once in the engine; the proto and the client's mirror table agree with it."""

from __future__ import annotations

import dataclasses

from jobworker import client, engine
from jobworker.api import jobworker_pb2 as pb


def test_every_limit_kind_is_a_field_of_the_engine_limits_and_the_proto() -> None:
    kinds = [kind.field for kind in engine.LIMIT_KINDS]
    assert kinds == [f.name for f in dataclasses.fields(engine.Limits)]
    assert set(kinds) <= set(pb.Limits.DESCRIPTOR.fields_by_name)


def test_the_client_table_mirrors_the_engine_kinds() -> None:
    mirror = [(f.field, f.option, f.value) for f in client.LIMIT_FIELDS]
    assert mirror == [(k.field, k.option, k.value) for k in engine.LIMIT_KINDS]
    assert [f.name for f in dataclasses.fields(client.Limits)] == [f.field for f in client.LIMIT_FIELDS]


def test_every_kind_can_be_written_by_both_drivers() -> None:
    for kind in engine.LIMIT_KINDS:
        assert set(kind.writes) == set(kind.controllers) == {"v1", "v2"}, kind.field
