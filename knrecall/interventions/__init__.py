"""Interventions on knowledge neurons: scaled generation, random controls, runs and statistics."""
