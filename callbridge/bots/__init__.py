"""Conversational bots and the contract they implement."""
