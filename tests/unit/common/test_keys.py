import pytest

from tessera.common.errors import InvalidSpec
from tessera.common.etcd import KeySchema


def test_task_keys_sort_by_round_then_task_and_stay_out_of_the_job_listing() -> None:
    keys = KeySchema("/t")
    task_keys = [keys.task("j", r, t) for r in (2, 10) for t in (3, 11)]
    assert task_keys == sorted(task_keys)
    assert not any(k.startswith(keys.jobs) for k in task_keys)
    assert keys.node_id_from_key(keys.node("abc")) == "abc"


@pytest.mark.parametrize("prefix", ["tessera", "/tessera/", ""])
def test_bad_prefixes_are_rejected(prefix: str) -> None:
    with pytest.raises(InvalidSpec, match="must start with '/'"):
        KeySchema(prefix)
