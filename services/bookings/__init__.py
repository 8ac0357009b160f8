"""The bookings service: practitioners, services, resource mappings, schedules, slots, availability
and bookings."""
