"""Feedback on answers: thumbs and comments, kept with the answer they are about."""
