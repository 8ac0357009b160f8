"""The registrations service: registration form lookups, duplicate checks and client + pet
onboarding."""
