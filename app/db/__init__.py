"""The app's SQL tables (keys, audit, answers, feedback) share one declarative base and the registry's engine."""
