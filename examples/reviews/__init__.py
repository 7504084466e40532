"""Review sentiment: a three-stage pipeline (parse -> a stateful model in an actor pool -> post).
Data and weights are generated deterministically, so it runs offline."""
