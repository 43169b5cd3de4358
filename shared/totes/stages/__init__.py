"""What each Lambda does, joining the domain modules: one module per stage."""
