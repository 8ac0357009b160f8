from services.runner import serve

if __name__ == "__main__":
    serve("registrations")
