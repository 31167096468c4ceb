"""Learning which tier each phase needs: quality signals, routing suggestions, trials."""
