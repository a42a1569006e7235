"""groups stage."""
