import ray

from cluster.ray_cluster import cluster_is_local


def test_the_local_head_listens_on_loopback_only(ray_address):
    assert ray_address.startswith("127.0.0.1:")
    assert {node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]} == {"127.0.0.1"}
    assert cluster_is_local()
