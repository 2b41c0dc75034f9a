"""sfm.tasks"""
