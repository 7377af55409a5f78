"""A Scaleway cluster file must name its private network and the head's security group."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from cluster.cluster_config import ClusterConfigError, parse_cluster

BASE: dict[str, Any] = {
    "cluster_name": "c1", "cloud": "scaleway",
    "scaleway": {"zones": ["fr-par-2"], "private_network_id": "pn-1",
                 "private_network_name": "pn"},
    "head": {"instance_type": "POP2-4C-16G", "image": "ubuntu_noble",
             "security_group_id": "sg-head"},
    "node_types": {"gpu-l4": {"instance_type": "L4-1-24G", "image": "gpu"}},
}


def test_complete_file_is_accepted() -> None:
    assert parse_cluster(copy.deepcopy(BASE)).scaleway is not None


@pytest.mark.parametrize(("section", "key", "field"), [
    ("scaleway", "private_network_id", "scaleway.private_network_id"),
    ("head", "security_group_id", "head.security_group_id"),
])
@pytest.mark.parametrize("how", ["missing", "empty"])
def test_missing_network_or_security_group_is_refused_naming_the_field(
        section: str, key: str, field: str, how: str) -> None:
    data = copy.deepcopy(BASE)
    if how == "missing":
        del data[section][key]
    else:
        data[section][key] = ""
    with pytest.raises(ClusterConfigError, match=r"box\.yaml: .*" + re.escape(field)):
        parse_cluster(data, source="box.yaml")


def test_box_cluster_file_is_a_valid_scaleway_cluster() -> None:
    from pathlib import Path

    from cluster.cluster_config import load_cluster
    from cluster.fake_scaleway.booting import BOX_HEAD_SECURITY_GROUP, BOX_PRIVATE_NETWORK

    cluster = load_cluster(Path(__file__).resolve().parents[2] / "configs" / "clusters" /
                           "box.yaml")
    assert cluster.cloud == "scaleway" and cluster.scaleway is not None
    assert cluster.scaleway.private_network_id == BOX_PRIVATE_NETWORK
    assert cluster.head.security_group_id == BOX_HEAD_SECURITY_GROUP
