"""toyworld: priors whose data distribution is known exactly (DESIGN.md section 5)."""
