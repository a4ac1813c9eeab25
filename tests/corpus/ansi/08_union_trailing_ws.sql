SELECT city FROM customers   
UNION
SELECT city FROM suppliers
UNION ALL
SELECT   city FROM warehouses	
ORDER BY city
