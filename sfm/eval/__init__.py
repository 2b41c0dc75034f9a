"""sfm.eval: metrics. oc20 (S2EF, IS2RE, IS2RS/ADwT), generation (validity, match rate,
uniqueness, lattice statistics), placement (success@k, anomalies), paired (two sample sets
compared per system); CLIs: python -m sfm.eval.gen_metrics, python -m sfm.eval.paired."""
