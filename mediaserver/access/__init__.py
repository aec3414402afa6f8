"""Who may do what: API tokens, their scopes and the identity a request acts as (pure)."""
