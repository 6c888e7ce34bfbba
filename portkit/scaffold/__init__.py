"""`portkit new-backend`: scaffold an installable backend plugin package from templates/backend/."""
