"""sfm.pipeline"""
