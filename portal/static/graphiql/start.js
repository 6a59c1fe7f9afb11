// GraphiQL against this portal's /graphql. Requests need an API key: the Headers tab starts
// with the key the dashboard was opened with in this tab (session storage), or a line to fill.
(function () {
  "use strict";
  var key = null;
  try {
    key = window.sessionStorage.getItem("portal.apiKey");
  } catch (e) {
    key = null;
  }
  var headers = JSON.stringify(
    { Authorization: "Bearer " + (key || "<paste an API key here>") },
    null,
    2
  );
  var fetcher = GraphiQL.createFetcher({ url: window.location.origin + "/graphql" });
  var root = ReactDOM.createRoot(document.getElementById("graphiql"));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultHeaders: headers,
      defaultEditorToolsVisibility: "headers",
      shouldPersistHeaders: false,
      defaultQuery:
        "# Set your API key in the Headers tab below: {\"Authorization\": \"Bearer <key>\"}\n" +
        "{\n  viewer {\n    role\n    name\n    merchants(first: 10) {\n      totalCount\n" +
        "      edges { node { id name status } }\n    }\n  }\n}\n",
    })
  );
})();
