from urllib.parse import urlparse, parse_qs

from hello import hello
from workers import WorkerEntrypoint, Response


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        # Parse the query parameters into a Python dictionary
        params = parse_qs(urlparse(request.url).query)
        name = params["name"][0] if "name" in params else "World"
        return Response(hello(name), headers={"x-greeting": self.env.GREETING})

    def greet(self, name):
        return self.env.GREETING + ", " + name
