"""The common schema and the small helpers every layer shares (durations, secrets, JSON). Imports nothing of ours."""
