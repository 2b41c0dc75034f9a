"""sfm.eval: metrics. oc20 (S2EF, IS2RE, IS2RS/ADwT, AdsorbML success@k), generation (validity,
match rate, uniqueness, lattice statistics), ranking (relax-and-rank of samples, with
ranking_files for its inputs and outputs), paired (two sample sets compared per system);
CLIs: python -m sfm.eval.gen_metrics, python -m sfm.eval.paired."""
