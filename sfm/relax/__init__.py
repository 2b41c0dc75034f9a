"""sfm.relax"""
