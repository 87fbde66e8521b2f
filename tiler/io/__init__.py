"""Inputs: what a job reads. `survey.py` turns the inputs a user names into the frames of a survey."""
