"""sfm.models.diffusion: noise processes (torus coordinates, lattice), conditioning masks, diffusion head, samplers."""
