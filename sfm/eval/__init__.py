"""sfm.eval"""
