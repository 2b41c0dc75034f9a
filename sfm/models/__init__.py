"""sfm.models"""
