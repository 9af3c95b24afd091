from __future__ import annotations

import msgpack
import pytest

from kvstore.codec import encode, fields
from kvstore.messages import BatchResults, Found, PutOp


def test_fields_encode_as_the_ext_payload_of_the_message() -> None:
    # The simulator's trace records an op's or a result's fields: they must carry what the message does.
    for message in (PutOp("k", b"v"), BatchResults((Found("k", b"v", 3),))):
        ext = msgpack.unpackb(encode(message))
        assert ext.code == 1 and ext.data == encode(fields(message))
    assert fields(PutOp("k", b"v")) == ("PutOp", "k", b"v", None, "", "", b"", "", False)


def test_fields_of_an_unregistered_object_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="not a registered message"):
        fields(object())
