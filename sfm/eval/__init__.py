"""sfm.eval: metrics. oc20 (S2EF, IS2RE, IS2RS/ADwT), generation (validity, match rate,
uniqueness, lattice statistics), placement (success@k, anomalies); CLI: python -m sfm.eval.gen_metrics."""
