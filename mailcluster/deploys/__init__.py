"""Small pyinfra deploy files for one job each (run by mailctl, not by operators)."""
